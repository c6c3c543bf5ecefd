"""Dia-1 (Dia-1.6B, 0626; DAC codec): config, byte tokenizer, model, checkpoints, generation, the `Dia` facade.

Layers, top down: api (the facade) -> longform, slots -> generation, checkpoint -> quantized, model,
layouts -> options, text, config. Nothing here imports fastdia.dia2.
"""
