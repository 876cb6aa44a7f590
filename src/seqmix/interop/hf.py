"""seqmix models as transformers models (the ``seqmix[hf]`` extra): ``SeqMixConfig``, ``SeqMixForCausalLM``.

Importing this module registers both with ``AutoConfig`` / ``AutoModelForCausalLM`` (model_type
"seqmix"), so ``save_pretrained`` writes config.json + model.safetensors and
``AutoModelForCausalLM.from_pretrained(directory)`` reads them back.

``generate()`` runs on the recurrent state: the prompt is prefilled in one forward (the mixers' chunked
form) and every new token is one ``SeqMixLM`` step from the state. The state travels between steps as a
``GenerationState``, which also holds the tokens it has consumed, and is carried by the two hooks
transformers documents for that: ``_update_model_kwargs_for_generation`` stores it after each forward and
``prepare_inputs_for_generation`` feeds only the tokens it has not consumed. Nothing depends on
transformers recognising a kwarg name: if rows were reordered (beam search) and transformers did not
reorder the state, ``prepare_inputs_for_generation`` finds each row's state by its token history, so
greedy, sampling and beam search are exact and never recompute a prefix under every transformers version
the ``hf`` extra admits. Padding is refused: a recurrent state has no way to skip pad tokens, so prompts
of a batch must have the same length.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from seqmix.interop.convert import from_transformers, supported_model_types
from seqmix.model import ModelConfig, SeqMixLM
from seqmix.model.state import select_batch

# ModelConfig's fields, stored flat in config.json; tie_embeddings is transformers' tie_word_embeddings.
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "tie_embeddings")
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


class SeqMixConfig(PretrainedConfig):
    """A ``ModelConfig`` as a transformers config: ``SeqMixConfig(mixer="mamba2", d_model=256, ...)`` takes
    ModelConfig's fields (validated the same way) plus transformers' own keyword arguments;
    ``tie_word_embeddings`` is ModelConfig's ``tie_embeddings``."""

    model_type = "seqmix"
    attribute_map = {"hidden_size": "d_model", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads"}

    def __init__(self, **kwargs):
        defaults = ModelConfig()
        fields = {name: kwargs.pop(name, getattr(defaults, name)) for name in MODEL_FIELDS}
        tie = kwargs.pop("tie_word_embeddings", defaults.tie_embeddings)
        ModelConfig(**fields, tie_embeddings=tie)  # validate now, with ModelConfig's error messages
        for name, value in fields.items():
            setattr(self, name, value)
        super().__init__(tie_word_embeddings=tie, **kwargs)

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs) -> "SeqMixConfig":
        fields = config.to_dict()
        return cls(tie_word_embeddings=fields.pop("tie_embeddings"), **fields, **kwargs)

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(**{name: getattr(self, name) for name in MODEL_FIELDS},
                           tie_embeddings=bool(self.tie_word_embeddings))


@dataclass
class GenerationState:
    """The recurrent ``state`` of a batch after it has consumed ``tokens`` [B, n] (from the zero state)."""

    state: list
    tokens: torch.Tensor

    def select(self, index: torch.Tensor) -> "GenerationState":
        """Rows ``index`` of the batch (beam reordering)."""
        index = index.to(self.tokens.device)
        return GenerationState(select_batch(self.state, index), self.tokens.index_select(0, index))

    def aligned_to(self, input_ids: torch.Tensor) -> "GenerationState | None":
        """This state with row i holding a row whose tokens are a proper prefix of ``input_ids[i]``, or None.

        Rows with the same history have the same state, so a beam reordering that transformers did not apply
        to the state is recovered exactly by matching histories."""
        n = self.tokens.shape[1]
        if n >= input_ids.shape[1]:
            return None  # nothing left to feed: the logits of the last token are not in the state
        prefix = input_ids[:, :n]
        if prefix.shape == self.tokens.shape and torch.equal(prefix, self.tokens):
            return self
        match = (prefix.unsqueeze(1) == self.tokens.unsqueeze(0)).all(-1)  # [B_now, B_state]
        if not bool(match.any(1).all()):
            return None
        return self.select(match.int().argmax(1))


@dataclass
class SeqMixCausalLMOutput(ModelOutput):
    """logits [B, T, vocab]; ``state``: the recurrent state after the tokens (when ``use_cache``)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    state: list | None = None


class SeqMixForCausalLM(PreTrainedModel, GenerationMixin):
    """A ``SeqMixLM`` (``self.model``) behind transformers' causal-LM interface.

    ``forward(input_ids, state=None, use_cache=None, labels=None)``: with ``use_cache`` (the default in
    eval mode) and no state, the zero state is created; the returned ``state`` continues the sequence.
    ``labels`` gives the shifted next-token cross-entropy (-100 ignored), as transformers' models do.
    """

    config_class = SeqMixConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True
    # transformers >= 5 names the tied pair target -> source; 4.x lists the tied names
    _tied_weights_keys = {"model.head.weight": "model.embed.weight"} if TRANSFORMERS_MAJOR >= 5 else ["model.head.weight"]

    def __init__(self, config: SeqMixConfig, model: SeqMixLM | None = None):
        super().__init__(config)
        self.model = SeqMixLM(config.to_model_config()) if model is None else model
        self.post_init()

    @classmethod
    def from_seqmix(cls, model: SeqMixLM) -> "SeqMixForCausalLM":
        """Wrap an existing SeqMixLM (its weights are shared, not copied)."""
        return cls(SeqMixConfig.from_model_config(model.config), model)

    def _init_weights(self, module):
        """Nothing: every seqmix module initialises itself when built (and from_pretrained loads all weights)."""

    def get_input_embeddings(self):
        return self.model.embed

    def set_input_embeddings(self, value):
        self.model.embed = value

    def get_output_embeddings(self):
        return self.model.head

    def set_output_embeddings(self, value):
        self.model.head = value

    def forward(self, input_ids: torch.LongTensor, state: list | None = None, use_cache: bool | None = None,
                labels: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> SeqMixCausalLMOutput | tuple:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("SeqMixForCausalLM: padded batches (attention_mask with zeros) are not supported by "
                             "recurrent state; give prompts of one length, or one prompt per call")
        use_cache = (not self.training) if use_cache is None else use_cache
        if use_cache and state is None:
            state = self.model.init_state(input_ids.shape[0])
        if state is None:
            logits = self.model(input_ids)
        elif isinstance(state, GenerationState):
            logits, new_state = self.model(input_ids, state=state.state)
            state = GenerationState(new_state, torch.cat([state.tokens, input_ids], dim=1))
        else:
            logits, state = self.model(input_ids, state=state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        output = SeqMixCausalLMOutput(loss=loss, logits=logits, state=state if use_cache else None)
        return output if return_dict is not False else output.to_tuple()

    # --- generation: the state is the cache ---------------------------------------------------------------

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our cache is `state`; no transformers Cache object is made for it

    def prepare_inputs_for_generation(self, input_ids, state=None, use_cache=None, attention_mask=None, **kwargs):
        """Only the tokens the state has not consumed: the prompt once, then the last sampled token."""
        if use_cache is False:
            return {"input_ids": input_ids, "use_cache": False, "attention_mask": attention_mask}
        aligned = None if state is None else state.aligned_to(input_ids)
        if aligned is None:
            if state is not None:
                warnings.warn("SeqMixForCausalLM.generate: the recurrent state does not continue these tokens; "
                              "recomputing from the start", RuntimeWarning, stacklevel=2)
            aligned = GenerationState(self.model.init_state(input_ids.shape[0]), input_ids[:, :0])
        consumed = aligned.tokens.shape[1]
        return {"input_ids": input_ids[:, consumed:], "state": aligned, "use_cache": True,
                "attention_mask": attention_mask if consumed == 0 else None}

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """transformers' own update, plus the state that the forward returned."""
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["state"] = getattr(outputs, "state", None)
        return model_kwargs

    def _reorder_cache(self, state, beam_idx):
        """Beam search's reordering, where transformers applies it (``aligned_to`` covers where it does not)."""
        return state.select(beam_idx) if isinstance(state, GenerationState) else select_batch(state, beam_idx)


AutoConfig.register("seqmix", SeqMixConfig, exist_ok=True)
AutoModelForCausalLM.register(SeqMixConfig, SeqMixForCausalLM, exist_ok=True)


def load_pretrained(directory: str | Path) -> SeqMixLM:
    """A SeqMixLM from a transformers ``save_pretrained`` directory: a ``SeqMixForCausalLM`` one, or one of a
    class ``from_transformers`` converts (``CONVERTERS``). In eval mode, float32, on the CPU."""
    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory}: no config.json (not a save_pretrained directory)")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type == SeqMixConfig.model_type:
        return SeqMixForCausalLM.from_pretrained(directory).model.float().eval()
    if model_type not in supported_model_types():
        raise ValueError(f"{directory}: model_type={model_type!r} is not supported; "
                         f"expected 'seqmix' or one of {supported_model_types()}")
    return from_transformers(AutoModelForCausalLM.from_pretrained(directory).float())
