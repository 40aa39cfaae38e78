"""Post-merge alignment: curation of a small SFT set (LIMA) for fine-tuning the best merged model."""
