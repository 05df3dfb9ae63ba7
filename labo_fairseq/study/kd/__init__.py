"""The distillation experiment's runs (:mod:`.runs`) and sequence-level KD data (:mod:`.seqkd_data`)."""
