"""The tutorial's MNIST CNN in PyTorch: model, training CLI, evaluation CLI."""
