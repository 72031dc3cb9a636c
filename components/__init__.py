"""Gradio faces of the engine: one module per tab, each thin over `studio` calls."""
