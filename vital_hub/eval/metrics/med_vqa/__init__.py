"""The med_vqa evaluate module; `vqa_scoring` holds its rules for in-process use."""
