"""Fine-tuning on Ray Train: the retriever (contrastive, hard negatives) and the generator (LoRA, RAFT)."""

from typing import Any, ClassVar

from ..stage import Outputs, StageDef
from .config import TrainGeneratorConfig, TrainRerankerConfig, TrainRetrieverConfig


class TrainedOutputs(Outputs):
    """What both training stages report: the checkpoints' scores and how the run went."""

    seen: ClassVar[str]  # the count of what the steps saw
    best: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    resumed_from_steps: list[int] = []
    throughput: dict[str, float] = {}
    product: ClassVar[str] = "model"  # the field naming the folder a later stage loads

    def model_path(self) -> str:
        return getattr(self, self.product)

    @classmethod
    def legacy(cls, manifest: dict, data: dict) -> dict:
        # the report's work column: the pairs or examples the steps saw (steps x batch)
        counts, batch = dict(data.get("counts") or {}), (manifest.get("config") or {}).get("batch_size", 0)
        counts.setdefault(cls.seen, counts.get("steps", 0) * batch)
        return super().legacy(manifest, {**data, "counts": counts})


class RetrieverOutputs(TrainedOutputs):
    seen: ClassVar[str] = "pairs"
    model: str  # sentence-transformers folder (LoRA merged in)
    selected_on: str = "val_ndcg@10"
    heldout: str | None = None  # Parquet (query, positive_id): queries no step trained on, for the ship gate
    teacher: str | None = None  # the cross-encoder whose margins it learnt (GPL)


class RerankerOutputs(TrainedOutputs):
    seen: ClassVar[str] = "pairs"
    model: str  # sentence-transformers CrossEncoder folder
    heldout: str | None = None


class GeneratorOutputs(TrainedOutputs):
    seen: ClassVar[str] = "examples"
    product: ClassVar[str] = "adapter"
    adapter: str  # PEFT LoRA folder
    heldout: str  # the examples no step trained on: evaluate answers them
    merged: str | None = None
    model: str  # as the spec named it
    base_model: str  # a folder or hub id transformers loads (a GGUF's converted copy)
    max_context_words: int = 120  # the prompt layout it trained on: serve and evaluate show context the same way


def teacher_stage(cfg: TrainRetrieverConfig) -> tuple[str, ...]:
    return ("train_reranker",) if cfg.teacher == "reranker" else ()


STAGES = (
    StageDef("train_reranker", TrainRerankerConfig, "ragworks.train.train_reranker:run", RerankerOutputs,
             needs=("negatives",), work=("pairs", "pairs"), incremental=True,
             provides=("reranker",),
             help="a cross-encoder reranker on Ray Train: synthetic query, its chunk, hard negatives (InPars)"),
    StageDef("train_retriever", TrainRetrieverConfig, "ragworks.train.train_retriever:run", RetrieverOutputs,
             needs=("negatives",), optional=("train_reranker",), reads=teacher_stage,
             external="ragworks.train.train_retriever:external_inputs", check="ragworks.train.config:check_retriever",
             work=("pairs", "pairs"), incremental=True, help="contrastive fine-tuning of the embedder on Ray Train (hard negatives)"),
    StageDef("train_generator", TrainGeneratorConfig, "ragworks.train.train_generator:run", GeneratorOutputs,
             needs=("rag_examples",), work=("examples", "examples"), incremental=True,
             provides=("adapter",), help="PEFT LoRA fine-tuning of the generator on Ray Train (RAFT examples)"),
)
