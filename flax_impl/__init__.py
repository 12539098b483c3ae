"""The tutorial's MNIST CNN in Flax Linen + Optax: model, training CLI, evaluation CLI."""
