"""Alignment after the merge: the SFT set on disk (`sft_set`), LIMA-style curation (`curation`), class conditioning
for C-RLFT (`conditioning`), the LoRA fine-tune (`tune`), and the curate and align stages (`stage`).
"""
