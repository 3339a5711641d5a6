"""Training stages: sft, reward, ppo, recommend (each a pure step + train_and_evaluate)."""
