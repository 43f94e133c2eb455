"""One module per `protege` subcommand: HELP, add_arguments(parser), run(args) -> exit code.

Modules here import only argparse/pydantic-level code at the top; stage code (torch, chromadb, llama.cpp) is imported
inside run() so that `protege --help` stays fast."""
