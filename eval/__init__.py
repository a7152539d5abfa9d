"""The frozen evaluation: CORE (DCLM's 22 in-context tasks, nanochat's rules) and bits per byte.

    bundle.py          where the CORE eval bundle lives, its download, reading core.yaml / csv / jsonl
    core_tasks.py      examples -> prompts -> token rows and scored spans (nanochat core_eval.py)
    core_reference.py  the slow reference: one example per forward, exactly nanochat's scoring
    core.py            the batched evaluator: many examples per forward, the same answer per example
    prefix_cache.py    the KV cache that lets all options of an example share their prompt's forward
    bpb.py             bits per byte over a fixed budget of validation tokens
    run.py             `evaluate(...)`, the result table, and `speedrun eval`
    open_model.py      an open-division model: built from its submission's source, scored by its logits
    open_scoring.py    the same score from outside the model's process: the model in the sandbox returns logits only
    open_generation.py generation from outside the model's process: a warm sandboxed model returns next-token logits,
                       the caller samples (the chat's open model)

Nothing here imports the submissions package: eval depends on `baseline` (and `protocol`) only. open_model.py
executes one submission's source file when asked to (`load_open_model`), in the processes meant for it.
"""
