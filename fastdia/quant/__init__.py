"""Weight-only int8/int4: modules and the plan (modules.py), formats (formats.py), stored checkpoints (store.py).

Applied from outside the model: a module swap plus a state-dict transform; model code does not know about it.
"""
