"""Text for the language-model task: the standard library's docstrings and a tokenizer trained on them."""
