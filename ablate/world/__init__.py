"""ablate's own synthetic world, in one place: a multi-label data set with captions, and the tiny CLIPs
pre-trained on it (presence-only or negation captions), which `pretrained: world-*` aliases name.

- `captions`: the two caption styles (what recipes name and the generator writes), no imports
- `scenes`: what the world draws and says (classes, one image, its captions), pure generation
- `dataset`: its files in the COCO 2014 layout: build (deterministic, cached), load, the `world` data set
- `recipe`: a pre-training recipe and the aliases naming one (`world-negation@seed=1`), torch-free
- `pretrain`: contrastive pre-training of a tiny open_clip model on the world's captions
- `checkpoints`: where a recipe's checkpoint is cached, and `build_checkpoint`, the one step that builds a
  missing one (the sweep's pre-flight and the CLI call it; loading a backbone only looks it up)
- `effect`: the report's pre-training effect (negation vs presence checkpoints), pure functions

Importing the package imports none of them.
"""
