"""Distillation tab (placeholder until its issue lands)."""
import gradio as gr


def create_tab(session) -> dict:
    gr.Markdown("*Distillation: coming soon.*")
    return {}
