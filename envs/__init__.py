"""Memory Gym environments, natively batched; importing `envs` registers every id with gymnasium."""

from envs.core import register_game
from envs.proof_of_memory import ProofOfMemoryGame, ProofOfMemoryImageGame

for _game in (ProofOfMemoryGame, ProofOfMemoryImageGame):
    register_game(_game)
