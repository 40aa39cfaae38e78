"""The chat-vector merge engine, used by the `merge` stage and by `chatgraft merge`: `chat_vector.merge_chat_vector`
plans and runs a merge, `registry` names the methods and `methods` implements them, `merger` streams tensors."""
