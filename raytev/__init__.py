"""raytev: dense retrieval (Tevatron's train / encode / index / search / evaluate) on Ray."""

__version__ = "0.1.0"


def train(**options):
    """Fine-tune a dense retriever; keyword arguments are `raytev train`'s flags (model_name_or_path=..., ...)."""
    from raytev.args import DataArguments, ModelArguments, PrecisionArguments, RayArguments, TrainingArguments
    from raytev.flags import options_from_dict
    from raytev.training.trainer import train as run

    return run(*options_from_dict((DataArguments, ModelArguments, TrainingArguments, PrecisionArguments,
                                   RayArguments), options, "raytev.train()"))
