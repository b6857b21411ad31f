"""CLIP as a network: its architecture read from a state dict, the dual-path ViT and ResNet
attention-pool forwards (architecture surgery), the text ensemble with its prefix cache, the
label-feature store, and `ClipExplainer`, which owns a model and its caches."""
