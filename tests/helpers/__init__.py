"""Helpers the tests share: generated image folders, dataset fixtures in the official layouts,
the headless-Chromium page check and command-line checks (``pythonpath`` of pytest holds ``tests``)."""
