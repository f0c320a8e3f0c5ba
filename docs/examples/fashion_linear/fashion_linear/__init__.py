"""A model of your own, served by maas: softmax regression over Fashion-MNIST pixels, in numpy."""
