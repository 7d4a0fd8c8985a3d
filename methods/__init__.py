"""One module per few-step method; each defines a class implementing `methods.base.Method`."""

from methods.base import METHODS, Method, MethodBase, build_method, method_class

__all__ = ["METHODS", "Method", "MethodBase", "build_method", "method_class"]
