"""The base/chat pair the chat vector is taken from: the `upstream` stage (stage.py), the manifest later stages
read (manifest.py), the pair check, the tiny Llama and its tokenizer."""
