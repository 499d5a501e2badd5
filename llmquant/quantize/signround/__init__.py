"""SignRound: rounding and clipping learned by signed gradient descent on each block's output."""
