"""mt: a small neural machine translation toolkit.

Three layers, imports running one way (tests/test_layout.py checks it):
- entry points (train.py, translate.py, scripts/*.py) parse a command line and call one job;
- jobs run one command each: trainer (training), translate, force_align (scripts/align.py), eval_alignment,
  average_checkpoints, export (CTranslate2);
- library rooms do one thing each and import no job: attention, model, search, loss, tokenizer, data,
  training_data, translator (the Translator that training's evaluation and translate.py share), aligner and align
  (word links from attention, Pharaoh, AER), alignment_training, eflomal_aligner, averaging, checkpoint, evaluate,
  config (the schemas), and the plumbing: files, cli, hardware, allocator, distributed, interrupt, heatmap, race.
"""
