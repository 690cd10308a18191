"""Memory Gym environments, natively batched; importing `envs` registers every id with gymnasium."""

from envs.core import register_game
from envs.endless_mystery_path import EndlessMysteryPathGame
from envs.mortar_mayhem import GAMES as MORTAR_MAYHEM_GAMES
from envs.mystery_path import GridMysteryPathGame, MysteryPathGame
from envs.proof_of_memory import ProofOfMemoryGame, ProofOfMemoryImageGame
from envs.searing_spotlights import EndlessSearingSpotlightsGame, SearingSpotlightsGame

for _game in (
    ProofOfMemoryGame,
    ProofOfMemoryImageGame,
    *MORTAR_MAYHEM_GAMES,
    MysteryPathGame,
    GridMysteryPathGame,
    EndlessMysteryPathGame,
    SearingSpotlightsGame,
    EndlessSearingSpotlightsGame,
):
    register_game(_game)
