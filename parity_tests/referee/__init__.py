"""The referee: the tutorial's CNN, its loss, its gradients and Adam in float64 NumPy.

Written from the equations, with no torch and no JAX (`test_referee.py` checks that importing
it loads neither), so that each framework can be held to the model's exact answer instead of
only to the other framework. It reads MNIST from the IDX files with its own code (`mnist.py`),
runs the network forward and backward by hand (`network.py`), bounds what float32 arithmetic
may add to each of its results through the whole pass (`bounds.py`) and in each layer alone, fed
a framework's own inputs of that layer (`layers.py`), and steps Adam (`adam.py`). `alone.py`
runs it as a command, where none of the frameworks can be imported.
"""
