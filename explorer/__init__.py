"""The CLIP Surgery Explorer web app (Gradio): layout, handlers, per-session state, the model store,
served files and component subclasses. The engine it drives is `surgery`, which has no Gradio in it."""
