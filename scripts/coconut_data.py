"""Write ProsQA-like graphs in the Coconut JSON format (prosqa_train.json, prosqa_valid.json,
prosqa_test.json), as facebookresearch/coconut and Ber666/reasoning-by-superposition read them.

    python scripts/coconut_data.py --out data/prosqa_generated
    python scripts/coconut_data.py --out out/ood --set n_train=0 --set "test_overrides={path_length: [5, 6]}"

Options are those of the `prosqa` task (`interp/tasks/prosqa/__init__.py`): `n_nodes`,
`n_persons`, `edges_per_node`, `path_length`, `diameter`, `test_overrides`, `n_train`,
`n_val`, `n_test`, `seed`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> list[Path]:
    from interp.tasks import TaskConfigError, make_task
    from interp.training.config import parse_value

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a prosqa task option (repeatable)")
    a = p.parse_args(argv)
    options = {}
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set {item!r}: expected KEY=VALUE")
        options[key.strip()] = parse_value(value)
    try:
        task = make_task("prosqa", **options)
        paths = task.write(a.out)
    except TaskConfigError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({p.name: len(task.records(s)) for p, s in zip(paths, ("train", "val", "test"))}))
    return paths


if __name__ == "__main__":
    main()
