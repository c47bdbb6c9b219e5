"""Generated run names: ``"adjective-animal"``, like ``"crimson-heron"``."""

from __future__ import annotations

import random

__all__ = ["generate_run_name"]

_ADJECTIVES = (
    "amber agile ancient arctic azure bold brave bright brisk calm cheerful clever cobalt "
    "cosmic crimson curious daring dazzling eager electric emerald fancy fearless fiery "
    "gentle gilded glowing golden graceful happy hidden humble icy indigo jolly keen lively "
    "lucky lunar magenta mellow merry mighty misty nimble noble olive onyx opal patient "
    "placid polar proud quick quiet radiant rapid ruby russet rustic sandy sapphire scarlet "
    "serene shiny silent silver sleek smart snowy spry steady stellar stormy sunny swift "
    "tangerine teal tidy tranquil turquoise upbeat valiant velvet vivid warm wild wise witty zesty"
).split()
_ANIMALS = (
    "albatross alpaca antelope armadillo badger beaver bison bobcat buffalo camel caracal "
    "cheetah chipmunk cobra condor cougar coyote crane crow deer dingo dolphin donkey dove "
    "eagle eel egret elk falcon ferret finch flamingo fox gazelle gecko gibbon giraffe goose "
    "gorilla hare hawk hedgehog heron hippo hornet husky ibex ibis iguana impala jackal jaguar "
    "kestrel kingfisher koala lemur leopard lion llama lobster lynx macaw magpie manatee "
    "marmot marten meerkat mink mole moose narwhal newt ocelot octopus okapi orca osprey otter "
    "owl panda panther parrot pelican penguin puffin puma quail rabbit raccoon raven reindeer "
    "robin salmon seal shark sparrow stork swan tapir tiger toucan turtle viper walrus weasel "
    "whale wolf wombat woodpecker yak zebra"
).split()

_rng = random.Random()


def generate_run_name() -> str:
    """Return a random, readable run name."""
    return f"{_rng.choice(_ADJECTIVES)}-{_rng.choice(_ANIMALS)}"
