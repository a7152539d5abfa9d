"""The frozen reference trainer: nanochat's pretraining recipe, re-implemented and tested for equality.

Mirrors nanochat commit 92d63d4 (see ../shared/docs/nanochat-recipe.md). Nothing in here imports
a submission; plug-ins reach the trainer only through the hooks in `baseline/hooks.py`.
"""

NANOCHAT_COMMIT = "92d63d4e8bb4df75c3b71618f31ddde2378b2bcd"
