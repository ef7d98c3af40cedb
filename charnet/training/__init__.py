"""The training side: corpora, batches, the trainer, its monitor, distributed runs and
evaluation. Nothing in `charnet.inference` or `charnet.server` imports from here."""
