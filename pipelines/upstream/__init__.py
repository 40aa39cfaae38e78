"""The base/chat pair the chat vector is taken from.

In the default world it builds a word tokenizer, pretrains a tiny Llama `base` from scratch and fine-tunes it into
`chat`. With real models (`upstream.base_path`, `upstream.chat_path`) it only checks and records the local paths.
Either way it checks that the pair can be merged (reports/upstream.json) and writes a manifest that later stages
read through `read_upstream` (manifest.py); the stage is stage.py.
"""
