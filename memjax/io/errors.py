"""The error raised for unreadable or unsupported model files."""


class ModelFileError(ValueError):
  """A model file or directory is missing, truncated, corrupt or describes an unsupported model.

  The message always names the file (or directory) and what is wrong with it.
  """
