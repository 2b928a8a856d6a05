"""Built-in editing methods, one file each; importing this package registers them."""

from editlab.editing.methods import adalora, alphaedit, finetune, grace, ice, ike, lora, malmen, memit, mend, rome, serac  # noqa: F401
