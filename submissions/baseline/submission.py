"""The baseline as a submission: no hook, no override, so every default of the contract applies.

`speedrun run baseline` trains the frozen baseline without loading this file; it is here so the
conformance test covers the empty submission and so there is a README to hold the baseline's numbers.
"""

METADATA = {
    "authors": ["speedrun maintainers"],
    "description": "nanochat's base_train recipe unchanged: the reference every submission is compared with",
    "references": ["https://github.com/karpathy/nanochat"],
}
