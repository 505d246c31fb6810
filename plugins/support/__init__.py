"""Helpers shared by bundled plugins; not a plugin itself, never registered.

A bundled plugin imports only the kernel (``storyloom.*`` outside
``storyloom.plugins``) and this package, never another plugin's module, so
``-p no:NAME`` removes a plugin without taking away what the others use.
"""
