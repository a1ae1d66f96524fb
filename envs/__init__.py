"""Simulation: procedural MuJoCo worlds, the ImageNav gymnasium env, and data collection.

Importing this package registers ``nav_come/ImageNav-v0``.
"""

import gymnasium as gym

ENV_ID = "nav_come/ImageNav-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="envs.imagenav:ImageNavEnv")
