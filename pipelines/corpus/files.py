"""The names of the files the corpus stage writes into data/corpus, read by the stages after it."""

UPSTREAM_TEXT = "upstream_text.jsonl"
UPSTREAM_CHAT = "upstream_chat.jsonl"
# language world: the little target-language text the base pretrains on too; the upstream tokenizer never sees it
UPSTREAM_TARGET_TEXT = "upstream_target_text.jsonl"
TRAIN = "train.jsonl"
VALID = "valid.jsonl"
EVAL = "eval.jsonl"
EVAL_MULTITURN = "eval_multiturn.jsonl"
EVAL_SAFETY = "eval_safety.jsonl"
SFT = "sft.jsonl"  # the align stage's mixed-quality SFT set (target entities kept out of evaluation)
TARGET_LANGUAGE = "target_language.json"  # how evaluation tells the target language: {scripts} or {lexicon}
LM_EVAL = "lm_eval"  # an lm-evaluation-harness task on the target facts (eval.lm_eval_tasks: [target_facts])
