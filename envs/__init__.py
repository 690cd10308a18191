"""Memory Gym environments, natively batched; importing `envs` registers every id with gymnasium."""

from envs.core import register_game
from envs.mortar_mayhem import GAMES as MORTAR_MAYHEM_GAMES
from envs.proof_of_memory import ProofOfMemoryGame, ProofOfMemoryImageGame

for _game in (ProofOfMemoryGame, ProofOfMemoryImageGame, *MORTAR_MAYHEM_GAMES):
    register_game(_game)
