"""Leaves every other core module may use: user-facing errors, progress events, input
validation, device choice, memory (allocator, peak memory) and the package version.
Imports nothing else from the package.
"""
