"""tuneloop: fine-tune a pre-trained language model on your data, prove it, serve it, improve it."""

__version__ = "0.1.0"
