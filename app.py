"""CLIP Surgery Explorer: starts the Gradio app (a Hugging Face Space runs this file).

Everything else lives in `explorer/` (the app) and `surgery/` (the engine).
"""

from explorer.main import main

if __name__ == "__main__":
    main()
