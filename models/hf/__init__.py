"""Hugging Face `transformers` interop.

```python
from transformers import AutoModelForCausalLM
from models import hf
model = hf.from_hf(AutoModelForCausalLM.from_pretrained("path/to/local/dir"))  # -> HookedTransformer
hf_model = hf.to_hf(model)                     # native GPT-2 / Llama / GPT-J / MPT class, same logits
hf_model = hf.InterpForCausalLM.from_hooked(model)   # any architecture: our PreTrainedModel wrapper
hf.export_hf(model, "out/hf", tokenizer=tok, arch="auto")  # native class where one exists, else the wrapper
```

* `convert.py`: weight and config conversion to and from the native `transformers` classes.
* `native.py`: `InterpConfig` / `InterpForCausalLM` (`PreTrainedModel` + `GenerationMixin`),
  registered with `AutoConfig` / `AutoModelForCausalLM` as model_type "interp" when this
  package is imported (`import models` does).
"""

from .convert import (
    ARCHS,
    HFConversionError,
    config_from_hf,
    config_to_hf,
    export_hf,
    from_hf,
    hf_tokenizer,
    mpt_slopes,
    to_hf,
)
from .native import MODEL_TYPE, HookedCache, InterpConfig, InterpForCausalLM

__all__ = [
    "from_hf", "to_hf", "export_hf", "config_from_hf", "config_to_hf", "hf_tokenizer", "mpt_slopes",
    "HFConversionError", "ARCHS", "InterpConfig", "InterpForCausalLM", "HookedCache", "MODEL_TYPE",
]
