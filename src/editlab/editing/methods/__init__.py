"""Built-in editing methods, one file each; importing this package registers them."""

from editlab.editing.methods import (  # noqa: F401
    adalora,
    alphaedit,
    finetune,
    grace,
    ice,
    ike,
    ke,
    lora,
    malmen,
    memit,
    mend,
    propagate,
    rome,
    schema_propagate,
    serac,
)
