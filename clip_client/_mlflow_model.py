"""The models-from-code file of both pyfunc models: MLflow runs it when a logged model loads.

Which model it is (text or image) comes from the logged `model_config`; see
[`clip_client.serving.ClipEmbeddingModel`][clip_client.serving.ClipEmbeddingModel].
"""

from mlflow.models import set_model

from clip_client.serving import ClipEmbeddingModel

set_model(ClipEmbeddingModel())
