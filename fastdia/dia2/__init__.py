"""Dia2 (1B/2B; Mimi codec): config, tokenizer and script parsing, model, checkpoints, generation, the `Dia2` facade.

Layers, top down: api (the facade) -> slots -> generation, checkpoint -> quantized, model, state
-> text, config. Nothing here imports fastdia.dia1.
"""
