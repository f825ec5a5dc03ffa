"""Word alignment: which source word each target word translates.

- links: word links as sets of (source word, target word), subword pieces merged to words, symmetrization,
  the Pharaoh format, and the alignment error rate (AER) against hand-made gold;
- model_links: links read from a trained model's cross-attention (forced decoding of given pairs);
- head: the cross-attention head trained to align beside translation (its settings, links and gold rows);
- eflomal: eflomal, the statistical aligner, run as a program of its own (GPL; never imported);
- gold: scoring aligners against a gold standard, beside the diagonal and eflomal;
- merged: scripts/align.py's default, the head's weights and eflomal's runs on the given pairs merged into links.
"""
