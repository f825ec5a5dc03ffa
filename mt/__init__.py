"""mt: a small neural machine translation toolkit.

Three layers, imports running one way (tests/test_layout.py reads them from the folders):
- entry points (train.py, translate.py, scripts/*.py, and the installed mt-* programs) call one command;
- mt/commands/: one job each (train, translate, align, eval_alignment, average_checkpoints, export_ctranslate2),
  composing the library and importing no other command;
- the library: the rooms in mt/ (attention, model, search, loss, tokenizer, data, training_data, trainer,
  validation, training_log, translator, averaging, checkpoint, evaluate, config, ctranslate2_export, and the
  plumbing: files, cli, hardware, allocator, distributed, interrupt, heatmap) and mt/alignment/ (word links,
  links read from a model, the trained head, eflomal as a program, scoring against gold).
Settings live in mt/configs/*.yaml (Hydra) over the typed schemas of mt/config.py.
"""
