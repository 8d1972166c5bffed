import interp, json, sys
from interp.tasks import make_task, collate
from interp.heads import head_scores
d = sys.argv[1]
m, t = interp.load(d)
task = make_task(**json.load(open(f"{d}/config.json"))["task"])
b = collate(task.split("test")[:16], t.pad_token_id)
s = head_scores(m, b.input_ids, attention_mask=b.attention_mask, induction_tokens=False)
print("induction", s.induction); print("prev", s.prev_token)
