"""The tutorial's CNN as a PyTorch module (its attribute names, so its state_dict loads)."""

from torch import nn


class CNN(nn.Module):
    """conv 1->16->32->64 (5x5, valid), two 2x2 max-pools, fc 576->100->10; NCHW input."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(in_channels=1, out_channels=16, kernel_size=5),  # (N, 16, 24, 24)
            nn.ReLU(),
            nn.Conv2d(in_channels=16, out_channels=32, kernel_size=5),  # (N, 32, 20, 20)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),  # (N, 32, 10, 10)
            nn.Conv2d(in_channels=32, out_channels=64, kernel_size=5),  # (N, 64, 6, 6)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),  # (N, 64, 3, 3)
        )
        self.fc_layer = nn.Sequential(
            nn.Linear(64 * 3 * 3, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        )

    def forward(self, x):
        out = self.layer(x)
        # Per example, not the tutorial's view(batch_size, -1): a partial batch must work too.
        out = out.flatten(start_dim=1)  # (N, 576), ordered (C, H, W)
        return self.fc_layer(out)  # (N, 10) logits
