"""Built-in editing methods, one file each; importing this package registers them."""

from editlab.editing.methods import adalora, finetune, ice, lora, serac  # noqa: F401
