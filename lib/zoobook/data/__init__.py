"""Dataset readers (real formats) and generators that write small sets in the same formats."""
