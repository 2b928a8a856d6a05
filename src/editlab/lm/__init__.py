"""Language models: presets, tokenizer loading, datamodule, pretraining LightningModule."""
